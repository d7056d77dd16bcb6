"""The DSN parameters passed on to a next server that supports DSN (RFC 3461 §5.2.1).

When the remote server advertises ``DSN`` in its EHLO reply, the client carries the
sender's requests along instead of answering them itself: ``RET`` and ``ENVID`` on MAIL,
``NOTIFY`` and ``ORCPT`` on each RCPT, each as the sender gave it (§5.2.1 (a)-(f)).  The
remote server then reports success itself, so no "relayed" report is made for such a
recipient (§5.2.2 is the case of a server *without* DSN); failures it answers at RCPT or
DATA are still ours to report.

* NOTIFY goes on as given, and none goes on for a recipient the sender gave none
  (§5.2.1 (b): it MUST NOT be supplied then; the next server's default is the sender's).
* ORCPT goes on as given; when none was given, one is added holding the recipient address
  as it was received (§5.2.1 (d): MAY; if added, it MUST be that address) -- the job's
  address, since a copy forwarded to another address already carries the address it was
  sent to as its ORCPT (``colony_edge.acceptance.outbound_recipients``).
* Values are encoded for the wire: xtext (§4: "+" and "=" and every character outside
  33-126 as "+XX") for ENVID and an ``rfc822`` ORCPT; a non-ASCII address as the
  ``utf-8`` address type (RFC 6533 §3), utf-8-addr-unitext when the transaction uses
  SMTPUTF8 and its 7-bit form utf-8-addr-xtext otherwise (an ``rfc822`` ORCPT whose xtext
  carried UTF-8 octets is read as that UTF-8).  Other address types go on as received when
  they are valid xtext.
* Length limits: ENVID at most 100 characters, ORCPT's value at most 500 (§4.4, §4.2, as
  our own server checks them).  A value that would be longer once encoded, or that a job
  on the bus carries malformed (a control character, which the edge never lets in, an
  unknown address type that is not xtext), is left out rather than sent: a server may
  refuse the whole MAIL or RCPT for it, and a parameter dropped costs the sender only the
  echo in a report, not the message.

Nothing here can put a CR or LF into a command: such values are left out, every encoding
writes what it does not pass as escapes, and ``colony.protocols.smtp.client`` refuses an
argument with CR or LF anyway.
"""

from __future__ import annotations

import re

from colony.contracts.outbound import OutboundMail, OutboundRecipient

MAX_ENVID = 100   # RFC 3461 §4.4
MAX_ORCPT = 500   # RFC 3461 §4.2 (the value after "ORCPT=", as colony.protocols.smtp.syntax checks it)

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def xtext(value: str) -> str:
    """RFC 3461 §4: printable US-ASCII but "+" and "=" as themselves, anything else as
    "+XX" (upper-case hex) of its octets -- UTF-8 octets for a character beyond U+00FF; one
    up to U+00FF is the one octet an xtext decoder (``syntax.xtext_decode``) made it from."""
    out = []
    for ch in value:
        if "!" <= ch <= "~" and ch not in "+=":
            out.append(ch)
        else:
            octets = bytes([ord(ch)]) if ord(ch) <= 0xFF else ch.encode("utf-8", "surrogatepass")
            out.extend(f"+{o:02X}" for o in octets)
    return "".join(out)


def _embedded(ch: str) -> str:
    return f"\\x{{{ord(ch):X}}}"


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext, the 7-bit form: QCHAR as itself, every other character
    (controls, space, "\\", "+", "=", DEL and all non-ASCII) as ``\\x{HEX}``."""
    return "".join(ch if "!" <= ch <= "~" and ch not in "\\+=" else _embedded(ch) for ch in address)


def utf8_addr_unitext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-unitext, for a transaction that uses SMTPUTF8: as
    ``utf8_addr_xtext`` but non-ASCII characters go as themselves (UTF-8 on the wire)."""
    return "".join(ch if ("!" <= ch <= "~" and ch not in "\\+=") or (ord(ch) > 0x7F and ch.isprintable())
                   else _embedded(ch) for ch in address)


def _decode_embedded(value: str) -> str | None:
    """A utf-8 ORCPT as the sender wrote it (utf-8-addr-xtext, -unitext, or the bare
    address) back to the address; None when an escape names no character."""
    try:
        return _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), value)
    except (ValueError, OverflowError):
        return None


def _utf8_octets(address: str) -> str:
    """An ``rfc822`` ORCPT whose xtext carried UTF-8 octets ("J+C3+B6rg") was decoded an
    octet per character ("JÃ¶rg"): read those octets as the UTF-8 they are.  Anything else
    (the edge's own ORCPT for a UTF-8 address, octets that are not UTF-8) is the address."""
    try:
        return address.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return address


def orcpt_value(orcpt: str, smtputf8: bool) -> str | None:
    """The ORCPT parameter's value for ``orcpt`` as the job keeps it ("addr-type;address",
    the address of an ``rfc822`` one decoded, others as received), or None when it cannot
    be passed on as it is (malformed, or too long once encoded)."""
    addr_type, semi, address = orcpt.partition(";")
    if not semi or not address or not _KEYWORD.fullmatch(addr_type):
        return None
    kind = addr_type.lower()
    if kind == "utf-8":
        address = _decode_embedded(address)
        if address is None:
            return None
    if _CONTROL.search(address):
        return None   # the edge refuses them (syntax._printable): not from a client, not sent on
    if kind in ("rfc822", "utf-8"):
        if address.isascii() and kind == "rfc822":
            value = f"{addr_type};{xtext(address)}"
        else:
            if kind == "rfc822":
                address = _utf8_octets(address)
            value = "utf-8;" + (utf8_addr_unitext(address) if smtputf8 else utf8_addr_xtext(address))
    elif _XTEXT.fullmatch(address):
        value = f"{addr_type};{address}"   # a type we do not know goes on as received
    else:
        return None
    return value if len(value) <= MAX_ORCPT else None


def notify_value(notify: list[str] | None) -> str | None:
    if not notify:
        return None
    words = [w.upper() for w in notify]
    if words != ["NEVER"] and not (set(words) <= _NOTIFY and len(set(words)) == len(words)):
        return None
    return ",".join(words)


def mail_parameters(job: OutboundMail) -> tuple[str, ...]:
    """RET and ENVID for MAIL (RFC 3461 §5.2.1 (e), (f))."""
    out = []
    if job.ret:
        out.append(f"RET={job.ret}")
    if job.envid and not _CONTROL.search(job.envid):
        envid = xtext(job.envid)
        if len(envid) <= MAX_ENVID:
            out.append(f"ENVID={envid}")
    return tuple(out)


def rcpt_parameters(recipient: OutboundRecipient, smtputf8: bool) -> tuple[str, ...]:
    """NOTIFY and ORCPT for one RCPT (RFC 3461 §5.2.1 (a)-(d)); ``smtputf8``: the
    transaction's MAIL carries SMTPUTF8 (RFC 6533: the ORCPT may then be UTF-8)."""
    out = []
    notify = notify_value(recipient.notify)
    if notify:
        out.append(f"NOTIFY={notify}")
    orcpt = orcpt_value(recipient.orcpt or f"rfc822;{recipient.address}", smtputf8)
    if orcpt:
        out.append(f"ORCPT={orcpt}")
    return tuple(out)


__all__ = ["MAX_ENVID", "MAX_ORCPT", "mail_parameters", "notify_value", "orcpt_value", "rcpt_parameters",
           "utf8_addr_unitext", "utf8_addr_xtext", "xtext"]
