"""Vacation auto-replies ("out of office"): whether a stored message is answered, and the answer.

Theory of operation
-------------------
Pure: ``decide(message headers, settings, remembered senders, now)`` returns a ``Reply`` (the
whole message to send from the null sender) or a ``Suppressed`` naming the rule that
withheld it.  The mail store that owns the account calls it after the message is fsynced in
the mailbox, keeps ``RepliedSenders`` beside the account, and publishes the reply the way it
publishes delivery reports.  The rules, in the order they are checked (each one's reason is a
metric label):

* ``period``: outside the configured start/end (UTC), or not enabled;
* ``null_sender`` / ``system_sender``: the envelope sender is empty, or a mailer or a list's
  robot (``MAILER-DAEMON``, ``LISTSERV``, ``majordomo``, ``owner-*``, ``*-request``,
  ``*-owner``, ``[*-]bounce(s)``; and ``postmaster``, ``noreply``, ``no-reply``,
  ``donotreply``, ``do-not-reply``, whom an answer only bothers; a ``+detail`` is not
  looked at, so VERP's ``bounces+…`` is one too), or one of the user's own addresses
  (RFC 3834 §2, RFC 5230 §4.5);
* ``unreadable``: a header section that does not end within ``HEADER_LIMIT`` bytes (what
  lies past it -- a ``List-Id`` -- is not read, so nothing is answered);
* ``auto_submitted``: any ``Auto-Submitted`` field other than ``no`` (RFC 3834 §5; comments
  and parameters are not the value), or an ``X-Auto-Response-Suppress`` naming ``OOF``,
  ``AutoReply`` or ``All`` (MS-OXCMAIL: what Microsoft's and many robots' notifications send
  instead);
* ``precedence``: ``Precedence: bulk``, ``list`` or ``junk``;
* ``list``: ``List-Id`` or any other ``List-*`` field (RFC 2369, RFC 2919);
* ``report``: a ``multipart/report`` -- a DSN or an MDN (RFC 6522) that came with a sender
  (a read receipt from Thunderbird or Outlook has the user's own);
* ``junk``: the store filed the message as Junk (the DMARC quarantine);
* ``unverified_sender``: our own ``Authentication-Results`` (the first naming ``authserv_id``:
  the edge deletes any other under it, RFC 8601 §5) says SPF ``fail`` for the envelope sender,
  and neither DMARC for a From in the sender's domain nor a DKIM signature of the sender's
  domain passed -- a forged sender,
  whom a reply would be backscatter (a stranger's address used to aim our replies at it);
* ``not_addressed``: none of the user's addresses is in ``To``, ``Cc``, ``Bcc`` or their
  ``Resent-`` forms -- the implicit address check of RFC 5230 §4.5: mail that reached the
  user through a list or a blind copy is not answered.  The user's addresses are the
  account, ``addresses``, and ``also_own``: what the shell knows to be the same mailbox
  under another name (the RCPT through a domain alias);
* ``already_replied``: the sender was answered within ``days`` (RFC 5230 §4.1) with this
  reply: senders are remembered per ``handle_of`` the subject and text (RFC 5230 §4.2's
  implicit handle, as Pigeonhole keys them), so a changed reply -- new dates -- reaches
  those answered with the old one.

Hostile input: only the header section is read, at most ``HEADER_LIMIT`` bytes of it; a
field that does not parse counts as absent (never as a reason to answer something odd:
the address check then finds nobody and nothing is sent).  What goes into the reply
(subject, Message-ID) is stripped of line breaks and bounded, so a sender cannot add fields
to it; message ids are carried only when they are printable ASCII, and never RFC 2047-encoded
(an encoded ``In-Reply-To`` threads in no client), however long.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import HeaderParser
from email.policy import SMTP, compat32, default

from authres import AuthenticationResultsHeader
from authres.core import AuthResError

HEADER_LIMIT = 64 * 1024        # bytes of the original's header section read, at most
SUBJECT_MAX = 200               # characters of the original subject repeated in "Auto: ..."
REFERENCES_KEPT = 10            # message ids of the original's References carried on
MESSAGE_ID_MAX = 250
REMEMBERED_SENDERS = 1000       # senders remembered per account; the oldest reply is forgotten first

REASONS = ("period", "null_sender", "system_sender", "unreadable", "auto_submitted", "precedence", "list", "report",
           "junk", "unverified_sender", "not_addressed", "already_replied")

_SYSTEM_LOCALS = frozenset({"mailer-daemon", "listserv", "majordomo", "postmaster", "noreply", "no-reply",
                            "donotreply", "do-not-reply", "bounce", "bounces"})
_SYSTEM_PREFIXES = ("owner-",)
_SYSTEM_SUFFIXES = ("-request", "-owner", "-bounces", "-bounce")
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_BULK = frozenset({"bulk", "list", "junk"})
# X-Auto-Response-Suppress (MS-OXCMAIL): the values that ask for no out-of-office reply.
_SUPPRESS_OOF = frozenset({"all", "oof", "autoreply"})
# Printable ASCII only: the ids are written as they are (never encoded), and an 8-bit one
# would make the reply's header 8-bit.
_MSGID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,%d}>" % (MESSAGE_ID_MAX - 2))
# Ids written unencoded: with refold_source "none" a raw header is emitted as given (one id
# a line, at most MESSAGE_ID_MAX + 1 octets); the others are still folded at 78.
_REPLY_POLICY = SMTP.clone(refold_source="none")


@dataclass(frozen=True)
class VacationSettings:
    """The account's settings (the directory's ``vacation``, validated by the admin API)."""

    body: str
    subject: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    days: int = 7
    addresses: tuple[str, ...] = ()     # the user's other addresses (aliases it receives mail at)
    enabled: bool = True


@dataclass(frozen=True)
class Reply:
    recipient: str      # the envelope sender answered (also the reply's To)
    message: bytes      # the whole reply, CRLF line ends, to send with MAIL FROM:<>


@dataclass(frozen=True)
class Suppressed:
    reason: str         # one of REASONS


def handle_of(settings: VacationSettings) -> str:
    """The reply's identity for the bookkeeping: its subject and text."""
    return hashlib.sha256(f"{settings.subject or ''}\0{settings.body}".encode("utf-8", "replace")).hexdigest()[:16]


class RepliedSenders:
    """Senders answered with the reply ``handle`` and when: at most ``limit``, the one
    answered longest ago forgotten first.  Wire form (the store's ``vacation.replied`` file)::

        {"handle": "<handle_of>", "senders": [["bob@remote.test", "2026-11-27T14:00:00+00:00"], ...]}
        (oldest first; no handle: written before there was one)
    """

    def __init__(self, limit: int = REMEMBERED_SENDERS, handle: str = "") -> None:
        self.limit = limit
        self.handle = handle
        self._at: OrderedDict[str, datetime] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def last(self, sender: str) -> datetime | None:
        return self._at.get(sender.lower())

    def note(self, sender: str, at: datetime) -> None:
        key = sender.lower()
        self._at.pop(key, None)
        self._at[key] = at
        while len(self._at) > self.limit:
            self._at.popitem(last=False)

    def to_json(self) -> dict:
        return {"handle": self.handle, "senders": [[s, at.isoformat()] for s, at in self._at.items()]}

    @classmethod
    def from_json(cls, data: dict, limit: int = REMEMBERED_SENDERS) -> RepliedSenders:
        """ValueError or TypeError for what is not this form (the store then starts afresh)."""
        if not isinstance(data, dict):
            raise ValueError(f"not an object: {type(data).__name__}")
        out = cls(limit, str(data.get("handle", "")))
        for sender, at in data.get("senders", [])[-limit:]:
            when = datetime.fromisoformat(at)
            # Naive, it could not be compared with the rules' aware now: every message an error.
            out._at[str(sender).lower()] = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        return out


@dataclass
class Original:
    """What the rules read of the original message."""

    fields: dict[str, list[str]] = field(default_factory=dict)   # lower-case name -> values
    complete: bool = True     # the header section ended within HEADER_LIMIT

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


def read_headers(message: bytes) -> Original:
    """The header section's fields, at most ``HEADER_LIMIT`` bytes of them; values unfolded."""
    head = message[:HEADER_LIMIT]
    ends = [end for end in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if end >= 0]
    if ends:
        head = head[:min(ends) + 2]
    complete = bool(ends) or len(message) <= HEADER_LIMIT
    # Raw UTF-8 in a field (RFC 6532; what swaks sends) read as text, not as surrogates that
    # would come out as U+FFFD in the reply; any other 8-bit byte becomes U+FFFD here.
    parsed = HeaderParser(policy=compat32).parsestr(head.decode("utf-8", "replace"), headersonly=True)
    out: dict[str, list[str]] = {}
    for name, value in parsed.items():
        out.setdefault(name.lower(), []).append(_unfold(value))
    return Original(out, complete)


def _unfold(value) -> str:
    text = value if isinstance(value, str) else str(value)   # compat32: Header for undecodable bytes
    return re.sub(r"[\r\n]+[ \t]*", " ", text).strip()


def decide(*, account: str, settings: VacationSettings, mail_from: str, message: bytes, now: datetime,
           replied: RepliedSenders, special_use: str | None = None, display_name: str = "",
           also_own: tuple[str, ...] = (), authserv_id: str = "") -> Reply | Suppressed:
    """Answer ``message`` (received by ``account`` from envelope sender ``mail_from``) or say why not.
    ``now`` is timezone-aware UTC; ``replied`` counts only if its ``handle`` is this reply's.  ``also_own``: other names of the user's addresses the
    caller knows of (``local@<a domain alias>``).  Does not change ``replied``: the caller
    notes the reply once it is durable."""
    if not settings.enabled or (settings.start is not None and now < settings.start) \
            or (settings.end is not None and now >= settings.end):
        return Suppressed("period")
    sender = mail_from.strip()
    if not sender:
        return Suppressed("null_sender")
    own = {a.lower() for a in (account, *settings.addresses, *also_own)}
    if _system_sender(sender) or sender.lower() in own:
        return Suppressed("system_sender")
    original = read_headers(message)
    if not original.complete:
        return Suppressed("unreadable")
    # Every Auto-Submitted field counts, not the first: a robot that appends its own below a
    # "no" (Sieve's addheader :last) is a robot.  "no (sent by a person)" is "no" (RFC 3834 §5:
    # the keyword may be followed by comments and parameters).
    if any(_keyword(v) != "no" for v in original.fields.get("auto-submitted", ())):
        return Suppressed("auto_submitted")
    suppress = original.fields.get("x-auto-response-suppress", ())
    if any(_SUPPRESS_OOF & set(re.split(r"[\s,]+", v.lower())) for v in suppress):
        return Suppressed("auto_submitted")     # a robot's request, which Exchange honours
    if any(_keyword(v) in _BULK for v in original.fields.get("precedence", ())):
        return Suppressed("precedence")
    if any(name.startswith("list-") for name in original.fields):
        return Suppressed("list")
    if (original.first("content-type") or "").split(";", 1)[0].strip().lower() == "multipart/report":
        return Suppressed("report")
    if special_use == "\\Junk":
        return Suppressed("junk")
    if authserv_id and _forged_sender(original.fields.get("authentication-results", ()), authserv_id, sender):
        return Suppressed("unverified_sender")
    if not own & _addressed(original):
        return Suppressed("not_addressed")
    last = replied.last(sender) if replied.handle == handle_of(settings) else None
    if last is not None and now - last < timedelta(days=settings.days):
        return Suppressed("already_replied")
    return Reply(sender, build_reply(account, display_name, sender, settings, original, now))


def _forged_sender(fields, authserv_id: str, sender: str) -> bool:
    """Whether our Authentication-Results (the first field naming ``authserv_id``) has SPF
    failing for ``sender`` with neither DMARC passing for a From in its domain's tree nor a
    DKIM signature of its domain (or a parent of it) passing.  No such field (a trusted client's mail, an older edge): False.

    Read as RFC 8601 grammar by authres, which wrote it: the properties carry the sender's
    text (a DKIM signature's ``i=`` goes out unquoted, spaces and all; a quoted local part
    of ``smtp.mailfrom`` may hold ``;``), so a word search would take a forger's
    ``header.i=@x dmarc=pass`` for a DMARC pass and answer him.  A field of ours that does
    not parse is judged by its SPF word alone: nothing in it vouches."""
    ours = authserv_id.strip().lower()
    for value in fields:
        text = _unfold(value)
        if (_keyword(text).split() or [""])[0].strip('"') != ours:      # the authserv-id, comments aside
            continue
        try:
            results = AuthenticationResultsHeader.parse_value(text).results
        except (AuthResError, RecursionError):    # authres recurses once per nested comment
            head = re.sub(r"\([^()]*\)", " ", text)
            return re.search(r"(?:^|[\s;])spf\s*=\s*fail\b", head, re.I) is not None
        domain = sender.rpartition("@")[2].lower()
        spf_fail, vouched = False, False
        for result in results:
            method, outcome = str(result.method).lower(), str(result.result).lower()
            if method == "spf" and outcome == "fail":
                spf_fail = True
            elif method == "dmarc" and outcome == "pass":
                # It vouches for the From domain, which a forger picks (his own, signed by
                # his own key): only one in the sender's domain's tree says its owner sent it.
                author = _property(result, "header", "from")
                vouched = vouched or bool(author) and (domain == author or domain.endswith("." + author)
                                                       or author.endswith("." + domain))
            elif method == "dkim" and outcome == "pass":
                d = _property(result, "header", "d")
                vouched = vouched or bool(d) and (domain == d or domain.endswith("." + d))
        return spf_fail and not vouched
    return False


def _property(result, ptype: str, name: str) -> str:
    """The first ``ptype.name`` property of an authres result, lower case ("" if none)."""
    return next((str(p.value).lower() for p in result.properties
                 if str(p.type).lower() == ptype and str(p.name).lower() == name), "")


def _keyword(value: str) -> str:
    """A field's leading keyword, lower case, without comments (nested ones too) or parameters;
    one pass, however deep a hostile field nests its parentheses.  An unclosed comment is
    kept, so the value is no keyword at all."""
    out: list[str] = []
    depth, escaped, start = 0, False, 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and depth:
            escaped = True
        elif c == "(":
            if not depth:
                start = i
            depth += 1
        elif c == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif c == ";" and not depth:     # the parameters
            break
        elif not depth:
            out.append(c)
    if depth:
        out.append(value[start:])
    return "".join(out).strip().lower()


def _system_sender(sender: str) -> bool:
    local = sender.rpartition("@")[0].lower() if "@" in sender else sender.lower()
    local = local.partition("+")[0] or local     # bounces+<VERP>, noreply+<tag>
    return (local in _SYSTEM_LOCALS or local.startswith(_SYSTEM_PREFIXES) or local.endswith(_SYSTEM_SUFFIXES))


def _addressed(original: Original) -> set[str]:
    values = [v for name in _RECIPIENT_FIELDS for v in original.fields.get(name, ())]
    try:
        return {addr.lower() for _, addr in email.utils.getaddresses(values) if "@" in addr}
    except Exception:   # a field the address parser cannot take: nobody addressed, nothing sent
        return set()


def build_reply(account: str, display_name: str, recipient: str, settings: VacationSettings,
                original: Original, now: datetime) -> bytes:
    """The reply (RFC 3834 §3, RFC 5230 §5): from the account, to the envelope sender,
    ``Auto-Submitted: auto-replied``, threaded to the original, text/plain UTF-8."""
    domain = account.rpartition("@")[2]
    # An internationalised sender (RFC 6531) is written as UTF-8 (RFC 6532): RFC 2047 may not
    # encode an addr-spec, and "=?utf-8?q?j=C3=B6rg?=@..." is nobody's address.  Such a reply
    # must travel with SMTPUTF8 (``needs_smtputf8``).
    msg = EmailMessage(policy=_REPLY_POLICY if recipient.isascii() else _REPLY_POLICY.clone(utf8=True))
    # An Address, not formataddr's string: re-parsed, a non-ASCII name with quotes and commas
    # came out partly encoded, partly bare -- a From of several mailboxes.
    name = _one_line(display_name)[:100]
    msg["From"] = Address(display_name=name, addr_spec=account) if name else account
    if recipient.isprintable():
        # As the envelope has it (an SMTP Mailbox: one line, at most 254 octets): folded, a long
        # quoted local part with spaces came out without its quotes -- nobody's address.
        msg.set_raw("To", recipient)
    else:
        msg["To"] = recipient
    msg["Subject"] = _one_line(settings.subject) if settings.subject else f"Auto: {_original_subject(original)}"
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = f"<vacation.{secrets.token_hex(12)}@{domain}>"
    message_id = _message_id(original.first("message-id"))
    if message_id is not None:
        msg.set_raw("In-Reply-To", message_id)
        earlier = _MSGID.findall(original.first("references") or "")[-REFERENCES_KEPT:]
        msg.set_raw("References", "\r\n ".join([*earlier, message_id]))
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(settings.body, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes()


def needs_smtputf8(reply: Reply) -> bool:
    """Whether ``reply`` can only be sent with SMTPUTF8 (its recipient is internationalised)."""
    return not reply.recipient.isascii()


def _original_subject(original: Original) -> str:
    raw = original.first("subject") or ""
    try:
        if raw.isascii():
            # RFC 2047 words decoded (re-encoded on output), a character split over two joined.
            text = str(make_header(decode_header(raw)))
        else:
            # Raw UTF-8 beside encoded words: decode_header hands the raw part on as
            # raw-unicode-escape bytes, and any character past Latin-1 came out as "\u65e5".
            text = str(default.header_factory("subject", raw))
    except Exception:
        text = raw
    text = _one_line(text)
    return text[:SUBJECT_MAX] if text else "(no subject)"


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _message_id(value: str | None) -> str | None:
    found = _MSGID.search(value or "")
    return found.group(0) if found else None
