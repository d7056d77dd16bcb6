"""Parsing of MAIL FROM / RCPT TO arguments (RFC 5321 §4.1.2, RFC 1870, 3461, 6152, 6531).

Pure functions that raise ``SyntaxProblem`` carrying the reply to give; nothing here keeps
state.  Addresses are checked for shape only (the directory decides whether one exists).
"""

from __future__ import annotations

import ipaddress
import re

from colony.protocols.smtp import replies as R
from colony.protocols.smtp.replies import Reply


class SyntaxProblem(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[(?:[0-9.]{7,15}|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]{2,45})\]"
_MAILBOX = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})")
_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
# HELO names in the wild carry underscores (Windows host names): accepted, they are only
# recorded in Received:, never used to route.
_HELO_LABEL = r"[A-Za-z0-9_\u0080-\U0010ffff](?:[A-Za-z0-9_\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9_\u0080-\U0010ffff])?"
_HELO = re.compile(rf"(?:{_HELO_LABEL}(?:\.{_HELO_LABEL})*\.?|{_LITERAL})")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# ASCII digits only: str.isdigit() is also true of "²" or "٣", which int() refuses or reads.
_NUMBER = re.compile(r"[0-9]{1,20}")


def _literal_ok(domain: str) -> bool:
    """An address literal's value, past its shape (RFC 5321 §4.1.3): an IPv4 literal is four
    Snum of 0-255 ("[192.0.2.300]" is not one), an IPv6 literal one of the IPv6 forms."""
    if not domain.startswith("["):
        return True
    value = domain[1:-1]
    if value[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(value[5:])
        except ValueError:
            return False
        return True
    parts = value.split(".")
    return len(parts) == 4 and all(1 <= len(p) <= 3 and p.isascii() and p.isdigit() and int(p) <= 255
                                   for p in parts)


def is_number(text: str) -> bool:
    """A decimal of at most 20 ASCII digits (RFC 1870 size-value, RFC 3030 chunk-size)."""
    return _NUMBER.fullmatch(text) is not None


def is_helo_name(name: str) -> bool:
    return len(name) <= 255 and _HELO.fullmatch(name) is not None and _literal_ok(name)


def as_domain(host: str) -> str:
    """``host`` where RFC 5321/5322 want a domain: an IP address as an address literal
    ("[192.0.2.1]", "[IPv6:2001:db8::1]"), a name as it is.  A bare IP in EHLO is read by
    filters as a client without a name (SpamAssassin's HELO rules), and ``MAILER-DAEMON@192.0.2.1``
    is not an address at all."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: "+XX" is an octet. Octets that spell UTF-8 (a client's "J+C3+B6rg") are
    read as that text; each was taken for a character of its own ("JÃ¶rg"), which reports
    then showed garbled. Octets that are not UTF-8 stay one character each, as before."""
    if not _XTEXT.fullmatch(value):
        raise SyntaxProblem(R.SYNTAX_ERROR)
    octets = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes((int(m.group(1), 16),)), value.encode("ascii"))
    try:
        text = octets.decode("utf-8")
    except UnicodeDecodeError:
        text = octets.decode("latin-1")
    return _printable(text)


def _printable(value: str) -> str:
    """ENVID and ORCPT are copied into DSNs (``Original-Envelope-Id:``, ``Original-Recipient:``):
    a control character decoded from "+0D+0A" would write lines of the client's choosing into a
    report the cluster sends (RFC 3461 §4: they are printable text, an address)."""
    if _CONTROL.search(value):
        raise SyntaxProblem(R.SYNTAX_ERROR)
    return value


def split_path(argument: str, prefix: str) -> tuple[str, str]:
    """``FROM:<a@b> SIZE=1`` -> (``<a@b>``, ``SIZE=1``); a space after the colon is tolerated."""
    if argument[: len(prefix)].upper() != prefix:
        raise SyntaxProblem(R.SYNTAX_ERROR)
    rest = argument[len(prefix):].lstrip(" ")
    if not rest.startswith("<"):
        raise SyntaxProblem(R.SYNTAX_ERROR)
    end = _path_end(rest)
    return rest[: end + 1], rest[end + 1 :].strip(" ")


def _path_end(text: str) -> int:
    """Index of the '>' closing the path, skipping quoted strings in the local part."""
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    raise SyntaxProblem(R.SYNTAX_ERROR)


def parse_path(path: str, *, null_ok: bool, postmaster_ok: bool, bad: Reply) -> str:
    inner = path[1:-1]
    if inner == "":
        if null_ok:
            return ""
        raise SyntaxProblem(bad)
    if postmaster_ok and inner.lower() == "postmaster":
        return inner
    route = _ROUTE.match(inner)
    if route:  # RFC 5321 §4.1.1.3: source routes are accepted and ignored
        inner = inner[route.end():]
    if len(inner) > 254 or not _MAILBOX.fullmatch(inner) or not _literal_ok(inner.rpartition("@")[2]):
        raise SyntaxProblem(bad)
    return inner


def parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(" ") if text else ():
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not value):
            raise SyntaxProblem(R.SYNTAX_ERROR)
        key = key.upper()
        if key in params:
            raise SyntaxProblem(R.SYNTAX_ERROR)
        params[key] = value if eq else None
    return params


def parse_mail(argument: str, max_size: int) -> dict:
    path, rest = split_path(argument, "FROM:")
    params = parse_params(rest)
    out: dict = {"smtputf8": False}
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not is_number(value):
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["size"] = int(value)
            if out["size"] > max_size:
                raise SyntaxProblem(R.MESSAGE_TOO_BIG)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["body"] = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["smtputf8"] = True
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["ret"] = value.upper()
        elif key == "ENVID":
            if value is None or len(value) > 100:
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["envid"] = xtext_decode(value)
        elif key == "AUTH":
            # RFC 4954 §5: accepted and ignored unless the session authenticated (submission).
            if value is None:
                raise SyntaxProblem(R.SYNTAX_ERROR)
        else:
            raise SyntaxProblem(R.UNKNOWN_PARAMETER)
    address = parse_path(path, null_ok=True, postmaster_ok=False, bad=R.BAD_SENDER_SYNTAX)
    if not address.isascii() and not out["smtputf8"]:
        raise SyntaxProblem(R.UTF8_NOT_DECLARED)
    out["address"] = address
    return out


def parse_rcpt(argument: str, smtputf8: bool) -> dict:
    path, rest = split_path(argument, "TO:")
    params = parse_params(rest)
    out: dict = {}
    for key, value in params.items():
        if key == "NOTIFY":
            words = tuple(w.upper() for w in (value or "").split(","))
            if not value or not (words == ("NEVER",) or (set(words) <= _NOTIFY and len(set(words)) == len(words))):
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["notify"] = words
        elif key == "ORCPT":
            addr_type, semi, addr = (value or "").partition(";")
            if not semi or not _KEYWORD.fullmatch(addr_type) or not addr or len(value or "") > 500:
                raise SyntaxProblem(R.SYNTAX_ERROR)
            out["orcpt"] = f"{addr_type};{xtext_decode(addr) if addr_type.lower() == 'rfc822' else _printable(addr)}"
        else:
            raise SyntaxProblem(R.UNKNOWN_PARAMETER)
    address = parse_path(path, null_ok=False, postmaster_ok=True, bad=R.BAD_RECIPIENT_SYNTAX)
    if not address.isascii() and not smtputf8:
        raise SyntaxProblem(R.UTF8_NOT_DECLARED)
    out["address"] = address
    return out
