"""SPF, DKIM and DMARC verification of inbound mail into ``Authentication-Results``.

The checks are the maintained libraries' (pyspf, dkimpy, authheaders), not ours; this
module chooses what to check, runs the blocking libraries off the event loop, and turns
their answers into a header (RFC 8601) and a DMARC outcome the gate acts on.

Every DNS query those libraries make goes through dnspython's default resolver, which
``use_configured_dns`` points at ``Settings.dns_servers`` once per edge process (dnspython
documents ``dns.resolver.default_resolver`` as the process-wide resolver; pyspf, dkimpy and
authheaders take no resolver argument we could pass instead).

Cost: authheaders finds a domain's organizational domain (DMARC alignment, RFC 7489 §3.2)
by parsing the whole Public Suffix List -- some 9,000 rules, each IDNA-encoded -- on every
lookup, and a message needs up to four: measured, that was over 95 % of the CPU of a check
(tens of milliseconds per message).  ``_share_one_suffix_list`` makes its lookup use one list
parsed once per process; the answers are the library's own.  dkimpy's header parser (which
authheaders' DMARC check uses too) is quadratic in the lines of one folded field: the edge
puts a linear one with the same answers in its place (``_parse_headers_in_linear_time``).

DKIM needs the whole message in memory; for messages larger than
``Settings.edge_dkim_max_bytes`` the edge passes only the header section, so they are
checked for SPF and DMARC (on SPF alone) and say ``dkim=none (message too large to
verify)`` -- the edge's memory stays bounded by what an operator allows, whatever a sender
sends.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
from dataclasses import dataclass, replace
from email.utils import getaddresses

import authheaders
import authheaders.dmarc_lookup
import dkim
import dkim.crypto
import dkim.dnsplug
import dkim.util
import dns.resolver
import spf
from publicsuffix2 import PublicSuffixList
from authres import AuthenticationResultsHeader
from authres.core import AuthenticationResult, QuotableValue

from colony.dns import make_sync_resolver
from colony.settings import Settings


log = logging.getLogger("colony.edge.authentication")


class _SenderChosen(logging.Filter):
    """dkimpy logs at ERROR what any sender can cause -- a malformed signature, a key record
    that does not parse, a DNS timeout -- one line per message, worded from the sender's own
    data: a flood any stranger can write into the operator's log.  The verdict is in the
    Authentication-Results header and the edge's metrics; these lines are kept for an
    operator who turns ``colony.edge.authentication`` to DEBUG, and shown as DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not log.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("dkimpy").addFilter(_SenderChosen())

_DNS_CACHE_ENTRIES = 20_000

_HAS_DKIM_SIGNATURE = re.compile(rb"(?im)^dkim-signature[ \t]*:")

_suffix_lists: dict[str, PublicSuffixList] = {}
_suffix_lock = threading.Lock()


def _org_domain_from_shared_list(location, domain: str) -> str:
    """``authheaders.dmarc_lookup.get_org_domain_from_suffix_list`` with the list parsed once
    per file instead of once per call (the same list file, the same lookup)."""
    key = str(location)
    psl = _suffix_lists.get(key)
    if psl is None:
        with _suffix_lock:
            psl = _suffix_lists.get(key)
            if psl is None:
                with open(location) as suffix_list:
                    psl = _suffix_lists[key] = PublicSuffixList(suffix_list)
    return psl.get_public_suffix(domain)


def _share_one_suffix_list() -> bool:
    """Put the shared list into authheaders (see the module docstring).  If a later
    authheaders no longer has the function, checks stay correct, only slower: say so."""
    if not callable(getattr(authheaders.dmarc_lookup, "get_org_domain_from_suffix_list", None)):
        log.warning("authheaders has no get_org_domain_from_suffix_list any more: DMARC checks parse the "
                    "public suffix list on every lookup")
        return False
    authheaders.dmarc_lookup.get_org_domain_from_suffix_list = _org_domain_from_shared_list
    return True


_share_one_suffix_list()


_LIBRARY_RFC822_PARSE = dkim.rfc822_parse
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def _rfc822_parse_linear(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse`` with the same answers and exceptions, in linear time.

    The library appends each continuation line to its field with ``bytes +=``, which copies
    the field so far: a field folded over n lines costs O(n^2).  A client sending one field of
    "CRLF a" lines got ~12 s of a worker thread's CPU (holding the GIL) per 2 MB and per parse,
    ~13 minutes for a 16 MiB message (``edge_dkim_max_bytes``), DKIM and DMARC each parsing
    it; a handful of such messages took every thread the checks run in.  Here the lines of a
    field are joined once."""
    headers: list[list[bytes]] = []
    parts: list[list[bytes]] = []
    lines = re.split(b"\r?\n", message)
    i = 0
    while i < len(lines):
        line = lines[i]
        if len(line) == 0:
            i += 1   # the empty line ends the header section; the body follows it
            break
        if line[0] in (0x09, 0x20):
            parts[-1].append(line + b"\r\n")   # IndexError before any field, as the library's
        else:
            m = _FIELD_NAME.match(line)
            if m is not None:
                headers.append([m.group(1), b""])
                parts.append([line[m.end(0):] + b"\r\n"])
            elif not line.startswith(b"From "):
                raise dkim.MessageFormatError("Unexpected characters in RFC822 header: %s" % line)
        i += 1
    for header, pieces in zip(headers, parts):
        header[1] = b"".join(pieces)
    return headers, b"\r\n".join(lines[i:])


def _parse_headers_in_linear_time() -> bool:
    """Put ``_rfc822_parse_linear`` where dkimpy (DKIM/ARC verification) and authheaders
    (``check_dmarc``) look the parser up.  If a later version no longer has it there, checks
    stay correct: say so (a long folded field may then cost quadratic time again)."""
    if getattr(dkim, "rfc822_parse", None) is not _LIBRARY_RFC822_PARSE \
            or getattr(authheaders, "rfc822_parse", None) is not _LIBRARY_RFC822_PARSE:
        log.warning("dkimpy/authheaders no longer share dkim.rfc822_parse: header parsing is the library's own "
                    "(quadratic in the lines of one folded field)")
        return False
    dkim.rfc822_parse = authheaders.rfc822_parse = _rfc822_parse_linear
    return True


_parse_headers_in_linear_time()


# A DKIM key record is in the signer's DNS, so the sender chooses it.  dkimpy verifies RSA
# with Python's pow() and no bound on the key: a record with a 16 kbit modulus and a 32 kbit
# exponent cost ~20 s of CPU per message, one with 4 KiB of each ~170 s, all of it holding
# the GIL (every session of the edge stood still).  Keys beyond OpenSSL's own limit on the
# modulus, or with an exponent past NIST SP 800-56B's 256 bits (real keys use 65537), are
# refused before dkimpy sees them: dkim=fail, as for any key dkimpy cannot use.
MAX_DKIM_MODULUS_BITS = 16_384
MAX_DKIM_EXPONENT_BITS = 256


def _bounded_dkim_key(name, timeout=5):
    """dkimpy's own TXT lookup (``dkim.dnsplug.get_txt``), refusing RSA keys too costly to
    verify (see above).  A record that does not parse is passed on: dkimpy's checks say what
    is wrong with it."""
    record = dkim.dnsplug.get_txt(name, timeout=timeout)
    if not record:
        return record
    try:
        tags = dkim.util.parse_tag_value(record)
        if tags.get(b"k", b"rsa") != b"rsa":
            return record
        key = dkim.crypto.parse_public_key(base64.b64decode(re.sub(rb"\s+", b"", tags.get(b"p", b""))))
        modulus, exponent = int(key["modulus"]), int(key["publicExponent"])
    except Exception:
        return record
    if modulus.bit_length() > MAX_DKIM_MODULUS_BITS or exponent.bit_length() > MAX_DKIM_EXPONENT_BITS:
        raise dkim.KeyFormatError(f"RSA key too costly to verify: {modulus.bit_length()}-bit modulus, "
                                  f"{exponent.bit_length()}-bit exponent")
    return record


def use_configured_dns(settings: Settings) -> None:
    """Make dnspython's process-wide resolver the configured one (see the module docstring),
    with a cache: a sender's SPF, DKIM key and DMARC records are the same for every message
    it sends, and are kept as long as their TTLs allow (dnspython's LRU cache, bounded)."""
    resolver = make_sync_resolver(settings)
    resolver.cache = dns.resolver.LRUCache(_DNS_CACHE_ENTRIES)
    dns.resolver.default_resolver = resolver


# RFC 7489 §6.6.1 evaluates DMARC for every author domain in From:; authheaders does it per
# address, two DNS queries each, so a From: of 50,000 addresses was 100,000 queries and
# hours of a check thread.  Mail with more author domains than this is refused (the gate).
MAX_AUTHOR_DOMAINS = 10


_AUTHOR_DOMAIN = re.compile(rb"@([a-z0-9.]+)", re.IGNORECASE)   # authheaders.get_domain_part's


def authors(message: bytes) -> tuple[list[tuple[bool, str]], int]:
    """The author domains of a message as authheaders' ``check_dmarc`` finds them in its From
    fields (``get_domain_part``), each once in order of appearance, as (True, domain); an
    address without one (which makes DMARC a permerror) as (False, address); and how many
    addresses there were.  Raises as the library's parse does on a malformed header section."""
    headers, _ = _rfc822_parse_linear(message)
    values = (v.replace(b"\r\n", b"").decode(errors="ignore").strip() for n, v in headers if n.lower() == b"from")
    keys: dict[tuple[bool, str], None] = {}
    count = 0
    for _, address in getaddresses(values):
        count += 1
        found = _AUTHOR_DOMAIN.search(address.encode())
        keys.setdefault((True, found.group(1).lower().decode("ascii")) if found else (False, address), None)
    return list(keys), count


def _dmarc_input(keys: list[tuple[bool, str]], count: int) -> bytes:
    """What ``check_dmarc`` is given: one From address per author domain (each domain's
    result depends only on the domain), so the same answer costs one evaluation per domain."""
    addresses = [f"x@{key}" if is_domain else key for is_domain, key in keys]
    if len(addresses) == 1 and count > 1:
        addresses *= 2   # several addresses of one domain: still the library's multi-From case
    return "".join(f"From: {a}\r\n" for a in addresses).encode() + b"\r\n"


@dataclass(frozen=True)
class AuthOutcome:
    header: str                 # the whole "Authentication-Results: ..." field, no CRLF
    spf: str                    # pass, fail, softfail, neutral, none, temperror, permerror
    dkim: str                   # pass, fail, none, temperror, ...
    dmarc: str                  # pass, fail, none, temperror, ...
    dmarc_policy: str | None    # the From domain's published p= (none, quarantine, reject)
    from_domain: str | None
    author_domains: int = 0     # distinct author domains in From: (over MAX_AUTHOR_DOMAINS: refused)


# A property value with an "@" (authres writes it unquoted, as an address): a local part that
# is a dot-atom or a quoted string, then a domain -- nothing that could end the value early.
_PLAIN_ADDRESS = re.compile(r'(?:[^\s"();@\\]*|"(?:[^"\\\r\n]|\\[^\r\n])*")@[^\s"();@\\]+')
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def _as_comment(text: object) -> str:
    return re.sub(r"([()\\])", r"\\\1", _CONTROLS.sub(" ", str(text)))


def _confined(results: list[AuthenticationResult]) -> list[AuthenticationResult]:
    """The sender's words kept inside the comment, quoted string or value they came in, as
    authres does not: it writes a comment as it is (DMARC's names a DNS record's text: "x)
    dmarc=pass (y" closed it and went on as a verdict), and a reason or a property value with
    an "@" unquoted (an SPF exp= explanation with spaces).  Line breaks, which would start a
    field of the sender's making in our header section, become spaces."""
    for result in results:
        if result.result_comment:
            result.result_comment = _as_comment(result.result_comment)
        if getattr(result, "reason_comment", None):
            result.reason_comment = _as_comment(result.reason_comment)
        if result.reason:
            text = _CONTROLS.sub(" ", str(result.reason))
            result.reason = QuotableValue('"' + re.sub(r'(["\\])', r"\\\1", text) + '"' if "@" in text else text)
        kept = []
        for prop in result.properties:
            value = str(prop.value) if prop.value is not None else ""
            if "@" in value and not _PLAIN_ADDRESS.fullmatch(value) or _CONTROLS.search(value):
                continue            # no verdict of ours: left out rather than mended
            if prop.comment:
                prop.comment = _as_comment(prop.comment)
            kept.append(prop)
        result.properties = kept
    return results


def _result_of(results: list[AuthenticationResult], method: str) -> AuthenticationResult | None:
    return next((r for r in results if r.method == method), None)


def authenticate(message: bytes | None, header_section: bytes, authserv_id: str, ip: str, mail_from: str,
                 helo: str, dns_timeout: float = 3.0) -> AuthOutcome:
    """Blocking: run in a thread (``authenticate_async``).  ``message=None``: too large for
    DKIM; ``header_section`` (the header fields, up to the empty line) is always given.

    A check that fails to run (DNS timing out, a library choking on a malformed message) is
    reported as ``temperror`` for that method (RFC 8601 §2.7): it never fails the message."""
    results: list[AuthenticationResult] = []
    try:
        # pyspf directly rather than authheaders.check_spf, to bound the time a check may
        # take (RFC 7208 §4.6.4 asks for a limit; its default of 20 s would hold the session).
        sender = mail_from or f"postmaster@{helo}"
        result, reason = spf.check2(ip, sender, helo, timeout=dns_timeout, querytime=4 * dns_timeout)
        spf_result = authheaders.SPFAuthenticationResult(result=result, reason=reason, smtp_mailfrom=sender,
                                                         smtp_helo=helo)
    except Exception as exc:
        spf_result = authheaders.SPFAuthenticationResult(result="temperror", reason=_why(exc),
                                                         smtp_mailfrom=mail_from, smtp_helo=helo)
    results.append(spf_result)
    if message is None:
        dkim_result = authheaders.DKIMAuthenticationResult(result="none", result_comment="message too large to verify")
    else:
        try:
            if not _HAS_DKIM_SIGNATURE.search(header_section):
                # No signature is "none", not "fail" (RFC 8601 §2.7.1); dkimpy would say fail.
                dkim_result = authheaders.DKIMAuthenticationResult(result="none")
            else:
                dkim_result = authheaders.check_dkim(message, dnsfunc=_bounded_dkim_key)
            if dkim_result.result is None:
                dkim_result = authheaders.DKIMAuthenticationResult(result="none")
        except Exception as exc:
            dkim_result = authheaders.DKIMAuthenticationResult(result="temperror", result_comment=_why(exc))
    results.append(dkim_result)
    keys: list[tuple[bool, str]] = []
    try:
        # DMARC reads only the From fields: the header section, never the whole message
        # (up to edge_dkim_max_bytes) split into lines once more.
        keys, count = authors(header_section + b"\r\n")
        if len(keys) > MAX_AUTHOR_DOMAINS:
            dmarc_result = authheaders.DMARCAuthenticationResult(
                result="permerror", result_comment=f"{len(keys)} author domains, not evaluated")
        else:
            dmarc_result = authheaders.check_dmarc(_dmarc_input(keys, count), spf_result, dkim_result)
    except Exception as exc:
        dmarc_result = authheaders.DMARCAuthenticationResult(result="temperror", result_comment=_why(exc))
    results.append(dmarc_result)
    outcome = AuthOutcome(
        header="",
        spf=str(spf_result.result or "none"),
        dkim=str(dkim_result.result or "none"),
        dmarc=str(getattr(dmarc_result, "result", None) or "none"),
        dmarc_policy=str(dmarc_result.policy).lower() if getattr(dmarc_result, "policy", None) else None,
        from_domain=getattr(dmarc_result, "header_from", None),
        author_domains=len(keys),
    )
    # Written last: _confined may leave out a property the verdicts above still read.
    return replace(outcome, header=str(AuthenticationResultsHeader(authserv_id=authserv_id,
                                                                   results=_confined(results))))


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}".replace('"', "'")[:80]


async def authenticate_async(message: bytes | None, header_section: bytes, authserv_id: str, ip: str,
                             mail_from: str, helo: str, dns_timeout: float = 3.0) -> AuthOutcome:
    return await asyncio.to_thread(authenticate, message, header_section, authserv_id, ip, mail_from, helo,
                                   dns_timeout)


def _leading_token(value: bytes) -> bytes:
    """The first token of a field value after any comments (nested, escaped: RFC 5322 CFWS),
    in one pass however deep a hostile value nests them; a quoted string is unquoted."""
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:                              # "(": skip to its matching ")"
            depth = 0
            while i < n:
                c = value[i]
                if c == 0x5C:                        # a quoted-pair
                    i += 2
                    continue
                depth += (c == 0x28) - (c == 0x29)
                i += 1
                if depth == 0:
                    break
        else:
            break
    if i < n and value[i] == 0x22:                   # a quoted string
        end = value.find(b'"', i + 1)
        return value[i + 1:end] if end > 0 else b""
    end = i
    while end < n and value[end] not in b" \t\r\n;(":
        end += 1
    return value[i:end]


_FIELD_START = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?![ \t])")
_CLAIM_CANDIDATE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(authentication-results[ \t]*:)", re.I)


def claimed_results(header_section: bytes, authserv_id: str, last_terminated: bool) -> list[tuple[int, int]]:
    """The octet ranges (each a whole field with its CRLF) of the ``Authentication-Results``
    fields in ``header_section`` that claim ``authserv_id`` -- results only this cluster may
    write, so from anyone else forged: RFC 8601 §5 has a border MTA delete them, or a client
    or filter that trusts our authserv-id would show a stranger's ``dkim=pass``.

    ``header_section``: the message's first octets, up to the empty line or a limit;
    ``last_terminated``: its last field is complete (the empty line follows it) -- else that
    field may be cut off and is left alone.  The authserv-id is compared case-insensitively
    (a host name, RFC 8601 §2.5), after comments and with a quoted form unquoted."""
    wanted = authserv_id.strip().lower().encode()
    if not wanted:
        return []
    ranges: list[tuple[int, int]] = []
    # A field starts at a line that does not begin with white space.  A CR or LF alone ends
    # a line too (BDAT takes octets as they come): a mail client's parser, like Python's
    # email package, starts a field after it, so it is where the forged field starts.  Only
    # the fields named so are looked at: a header section of millions of short fields (up to
    # edge_dkim_max_bytes) cost seconds and a list of every field's start, ~12 times its size.
    for found in _CLAIM_CANDIDATE.finditer(header_section):
        start, colon = found.start(1), found.end(1) - 1
        following = _FIELD_START.search(header_section, colon)
        if following is None:
            if not last_terminated:
                continue
            end = len(header_section) + 2      # its CRLF, before the empty line
        elif following.end() >= len(header_section) and not last_terminated:
            continue        # cut right after a line: what follows the cut may continue it
        else:
            end = following.end()
        if _leading_token(header_section[colon + 1:min(end, len(header_section))]).lower() == wanted:
            ranges.append((start, end))
    return ranges
